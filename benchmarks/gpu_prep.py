"""`make gpu-prep`: everything the lent GPU machine's one call needs that a CPU can make, so that
none of its minutes go to building.

Run by the python of the GPU machine's stack (`.venv-gpu`: python 3.12, torch 2.11 CUDA 13.0,
triton 3.6; requirements-gpu.txt), on this machine, with no GPU:
  1. builds _C in place with the CPU kernels and the CUDA kernels for sm_90a (the H200's
     architecture; TORCH_CUDA_ARCH_LIST, all cores), ninja's progress on screen;
  2. strips its debug info (Python's build flags add -g: ~64 MB with it, the call carries at most
     64 MiB with the tree) and copies it to build/gpu/ with build.json: the commit, the files
     changed since, a hash of every tracked file, the extension sources' fingerprint, versions;
  3. checks, in a fresh process of this python, that the copy imports, has its CUDA kernels
     registered and serves the cpp backend;
  4. prints the device call to paste.
The campaign's env step (campaign_steps.env) uses the carried _C where its sources' fingerprint
matches the tree's and one CUDA op agrees with the reference there, and otherwise builds in place.

    python -m benchmarks.gpu_prep            # build, strip, record, check, print the call
    python -m benchmarks.gpu_prep --check    # check and print only
"""
import argparse
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

from benchmarks import provenance

ROOT = provenance.ROOT
ARCH = "9.0a"  # sm_90a: Hopper (H200, H100); a build without a GPU must name its architecture
MAX_MB = 12  # a stripped _C is ~7.5 MB; more means debug info or a fat binary crept back in
# The one call: `timeout_s` leaves the plan's 540 s plus start-up margin inside the session's
# ~9.5 usable minutes (the machine's own start-up is not part of the call's wall time).
CALL_TIMEOUT_S = 570
CALL_COMMAND = "python3 -m benchmarks.campaign quick --out $OUT"


def extension_name():
    return "_C" + sysconfig.get_config_var("EXT_SUFFIX")


def built_path():
    return os.path.join(ROOT, "convnext_kernels", extension_name())


def carried_path():
    return os.path.join(ROOT, provenance.GPU_BUILD, extension_name())


def build():
    """Builds _C in place for ARCH with every core; returns the seconds it took."""
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=ARCH, MAX_JOBS=str(os.cpu_count() or 2),
               FORCE_CUDA="1")
    env.pop("CK_NO_CUDA", None)
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        env.setdefault("CUDA_HOME", "/usr/local/cuda")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # ninja
    started = datetime.datetime.now()
    print(f"building _C for sm_{ARCH.replace('.', '')} with {env['MAX_JOBS']} jobs "
          "(about 5 minutes on 2 cores when every file is new)", flush=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                   check=True)
    return (datetime.datetime.now() - started).total_seconds()


def strip_and_record(build_seconds):
    import torch
    built = built_path()
    subprocess.run(["strip", "--strip-debug", built], check=True)
    size_mb = os.path.getsize(built) / 2**20
    if size_mb > MAX_MB:
        sys.exit(f"gpu-prep: {built} is {size_mb:.1f} MB stripped, more than {MAX_MB} MB")
    os.makedirs(os.path.dirname(carried_path()), exist_ok=True)
    for old in glob.glob(os.path.join(ROOT, provenance.GPU_BUILD, "_C*.so")):
        os.remove(old)
    shutil.copy2(built, carried_path())
    info = provenance.commit_info()
    record = {"commit": info["commit"], "changed": info["changed"],
              "built": datetime.datetime.now().isoformat(timespec="seconds"),
              "build_seconds": round(build_seconds), "extension": extension_name(),
              "size_MB": round(size_mb, 2), "cuda_arch": ARCH,
              "python": sysconfig.get_python_version(), "torch": torch.__version__,
              "torch_cuda": torch.version.cuda,
              "extension_sources": provenance.fingerprint(provenance.EXTENSION_SOURCES),
              "manifest": provenance.manifest()}
    with open(os.path.join(ROOT, provenance.BUILD_RECORD), "w") as f:
        json.dump(record, f, indent=1)
    return record


CHECK = """
import torch, convnext_kernels as ck
from convnext_kernels import _ext
assert _ext.LOADED, _ext.LOAD_ERROR
assert _ext.BUILT_WITH_CUDA, "built without CUDA kernels"
assert torch._C._dispatch_has_kernel_for_dispatch_key("convnext_kernels::dwconv2d", "CUDA")
x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
w = torch.randn(8, 1, 7, 7, dtype=torch.float64)
got = ck.dwconv2d(x, w, backend="cpp")
want = torch.nn.functional.conv2d(x, w, padding=3, groups=8)
assert torch.allclose(got, want), (got - want).abs().max()
print("imports:", _ext._C.__file__)
"""


def check():
    """The carried _C imports in a fresh process of this python (the tree's copy of it, which is
    the same file), with CUDA kernels registered and a cpp op right."""
    record = provenance.read_build_record()
    if record is None or not os.path.exists(carried_path()):
        sys.exit("gpu-prep: nothing in build/gpu; run `make gpu-prep`")
    if provenance.fingerprint(provenance.EXTENSION_SOURCES) != record["extension_sources"]:
        sys.exit("gpu-prep: csrc/ or setup.py changed since build/gpu was built; run "
                 "`make gpu-prep` again")
    with open(carried_path(), "rb") as a, open(built_path(), "rb") as b:
        if a.read() != b.read():
            sys.exit(f"gpu-prep: {built_path()} differs from the carried copy")
    subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, check=True)
    return record


def device_call(record):
    carry = [provenance.GPU_BUILD]
    return (f"_C: {record['extension']}, {record['size_MB']} MB, sm_{ARCH.replace('.', '')}, "
            f"commit {record['commit'][:12]}"
            + (f" + {len(record['changed'])} changed files" if record["changed"] else "") + "\n"
            "The device call (one call, then give_back):\n"
            f"  command:   {CALL_COMMAND}\n"
            f"  carry:     {json.dumps(carry)}\n"
            f"  timeout_s: {CALL_TIMEOUT_S}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check and print the call")
    args = parser.parse_args(argv)
    if not args.check:
        strip_and_record(build())
    print(device_call(check()), end="")


if __name__ == "__main__":
    main()
