"""What a result was measured on: the commit, the files changed since, and fingerprints of the
code, computed alike with or without git (the GPU machine's copy of the tree has no .git).

`make gpu-prep` writes build/gpu/build.json with the commit and a manifest of every tracked
file's hash; on a machine without git the commit is read from there, and the files whose hash
differs from the manifest are named beside it.
"""
import hashlib
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_BUILD = os.path.join("build", "gpu")  # what gpu-prep writes: _C for the GPU machine, build.json
BUILD_RECORD = os.path.join(GPU_BUILD, "build.json")
# The files a compiled _C depends on.
EXTENSION_SOURCES = ("setup.py", "csrc")
# The files a measurement depends on: the package, its kernels and the benchmarks.
CODE = EXTENSION_SOURCES + ("convnext_kernels", "benchmarks")
_CODE_SUFFIXES = (".py", ".cpp", ".h", ".cu", ".cuh", ".json")


def _file_hash(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _files_under(root, parts):
    """Relative paths of the code files under `parts` (files or folders), sorted; results and
    caches excluded."""
    found = []
    for part in parts:
        full = os.path.join(root, part)
        if os.path.isfile(full):
            found.append(part)
            continue
        for directory, dirs, files in os.walk(full):
            dirs[:] = sorted(d for d in dirs if d not in ("__pycache__", "results"))
            found += [os.path.relpath(os.path.join(directory, f), root) for f in files
                      if f.endswith(_CODE_SUFFIXES)]
    return sorted(found)


def fingerprint(parts, root=ROOT):
    """A short hash of the contents (and names) of the code files under `parts`."""
    digest = hashlib.sha256()
    for path in _files_under(root, parts):
        digest.update(path.encode() + b"\0" + _file_hash(os.path.join(root, path)).encode())
    return digest.hexdigest()[:16]


def git(*args, root=ROOT):
    """git's output, or None where there is no git or no repository."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def manifest(root=ROOT):
    """{tracked path: hash of its working-tree contents} (git's list of tracked files)."""
    listed = git("ls-files", root=root)
    paths = listed.splitlines() if listed else []
    return {p: _file_hash(os.path.join(root, p)) for p in paths
            if os.path.isfile(os.path.join(root, p))}


def read_build_record(root=ROOT):
    try:
        with open(os.path.join(root, BUILD_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_code(path):
    """Whether a change to `path` can change a measurement (results and docs cannot)."""
    return any(path == part or path.startswith(part + "/") for part in CODE) \
        and "/results/" not in path


def commit_info(root=ROOT):
    """{"commit": ..., "changed": [code files that differ from it]}: from git where there is
    one, else from gpu-prep's build record (its manifest against the files here)."""
    head = git("rev-parse", "HEAD", root=root)
    if head:
        status = git("status", "--porcelain", "--untracked-files=no", root=root) or ""
        return {"commit": head, "changed": sorted(line[3:] for line in status.splitlines()
                                                  if _is_code(line[3:]))}
    record = read_build_record(root)
    if record is None:
        return {"commit": os.environ.get("CK_COMMIT", "unknown (no git and no build record)"),
                "changed": []}
    changed = [p for p, h in record["manifest"].items() if _is_code(p) and (
        not os.path.isfile(os.path.join(root, p)) or _file_hash(os.path.join(root, p)) != h)]
    return {"commit": record["commit"], "changed": sorted(changed + record.get("changed", []))}


def describe(root=ROOT):
    """The commit measured, as one line: the hash, and the files changed since if any."""
    info = commit_info(root)
    if not info["changed"]:
        return info["commit"]
    names = ", ".join(info["changed"][:8]) + (" ..." if len(info["changed"]) > 8 else "")
    return f"{info['commit']} + changes in {len(info['changed'])} files ({names})"
