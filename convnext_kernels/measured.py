"""auto's measured choices: per GPU model, the fastest backend of each op (eager `torch`
included, so auto is never slower than eager where a choice was measured) by dtype, pass
(inference or training) and shape class, as the GPU campaign timed them.

The campaign writes auto_table.json beside its results; `python -m benchmarks.campaign adopt`
files it here as measured/<device>.json. A table applies to the device whose name it carries
(torch.cuda.get_device_name), and a measured choice to calls within CHANNEL_FACTOR of its
channels and ROW_FACTOR of its rows (the nearest such entry). Elsewhere (another GPU, a shape
far from every measured one, a CPU) auto keeps each op's count-based order
(backends.Op.auto_order); `source(device)` says which applies.
"""
import glob
import json
import logging
import math
import os

import torch

TABLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "measured")
CHANNEL_FACTOR = 2.0
ROW_FACTOR = 4.0
# The device types whose auto reads tables (CPU orders are fixed per op from committed runs;
# tests add "cpu" to check the mechanism on a rehearsal's table).
DEVICE_TYPES = {"cuda"}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}

_log = logging.getLogger("convnext_kernels")


class Table:
    """One device's measured choices: entries {op, dtype, pass, variant, channels, rows,
    choice, medians_ms, case}."""

    def __init__(self, data, path=None):
        self.device = data["device"]
        self.commit = data.get("commit")
        self.entries = data["entries"]
        self.path = path

    @classmethod
    def load(cls, path):
        with open(path) as f:
            return cls(json.load(f), path)

    def choice(self, op, dtype, channels, rows, training, variant="v1"):
        """The measured fastest backend for this call's class, or None where nothing was
        measured near it."""
        dtype = DTYPE_NAMES.get(dtype, str(dtype))
        pass_name = "fwd+bwd" if training else "fwd"
        best, best_distance = None, math.inf
        for entry in self.entries:
            if (entry["op"], entry["dtype"], entry["pass"], entry.get("variant", "v1")) != (
                    op, dtype, pass_name, variant):
                continue
            dc = abs(math.log2(channels / entry["channels"]))
            dr = abs(math.log2(max(rows, 1) / entry["rows"]))
            if dc > math.log2(CHANNEL_FACTOR) or dr > math.log2(ROW_FACTOR):
                continue
            if dc + dr < best_distance:
                best, best_distance = entry, dc + dr
        return best["choice"] if best is not None else None

    def describe(self):
        return (f"measured on {self.device} ({len(self.entries)} choices"
                + (f", commit {self.commit[:12]}" if self.commit else "")
                + (f", {os.path.relpath(self.path, os.path.dirname(TABLE_DIR))}"
                   if self.path else "") + ")")


_tables = None  # device name -> Table, loaded on first use
_names = {}  # (device type, index) -> device name
_announced = set()


def tables():
    global _tables
    if _tables is None:
        _tables = {}
        for path in sorted(glob.glob(os.path.join(TABLE_DIR, "*.json"))):
            table = Table.load(path)
            _tables[table.device] = table
    return _tables


def device_name(device):
    """The name a table is filed under: torch.cuda.get_device_name for a GPU."""
    key = (device.type, device.index)
    if key not in _names:
        _names[key] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                       else device.type)
    return _names[key]


def table_for(device):
    """The table of `device`, or None."""
    if device.type not in DEVICE_TYPES:
        return None
    name = device_name(device)
    table = tables().get(name)
    if name not in _announced:
        _announced.add(name)
        _log.info("convnext_kernels auto on %s: %s", name, source(device))
    return table


@torch.compiler.assume_constant_result
def measured_choice(op, dtype_name, channels, rows, training, variant, device_type,
                    device_index):
    """table_for(device).choice(...) on plain values: a constant for torch.compile (the lookup
    runs once, while tracing)."""
    table = table_for(torch.device(device_type, device_index))
    if table is None:
        return ""
    return table.choice(op, dtype_name, channels, rows, training, variant) or ""


def source(device):
    """Where auto's choices on `device` come from, in words."""
    if device.type not in DEVICE_TYPES:
        return f"{device.type}: each op's fixed order (measured on the CI machine's CPU)"
    table = tables().get(device_name(device))
    if table is None:
        return (f"no measured table for {device_name(device)}: each op's count-based order "
                "(fewest launches first)")
    return table.describe()
