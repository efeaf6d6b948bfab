"""Read what the real wandb package wrote for an offline run (its ``run-*.wandb`` log).

The file is a sequence of 32 KiB blocks of length-prefixed protobuf ``Record`` chunks (the
LevelDB log format wandb uses); reading it back checks what a later ``wandb sync`` uploads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7  # crc32 (4) + length (2) + chunk type (1)
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    position, pending = 7, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if length == 0 and kind == 0:  # zero padding up to the block end
            position += left
            continue
        pending += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """History (last value per key), config keys and run metadata of one offline run."""
    (log_file,) = run_dir.glob("run-*.wandb")
    history: dict[str, Any] = {}
    config: dict[str, Any] = {}
    run: dict[str, Any] = {}
    for record in records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history[key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "run":
            run = {
                "group": record.run.run_group,
                "job_type": record.run.job_type,
                "tags": list(record.run.tags),
                "project": record.run.project,
            }
    return {"history": history, "config": config, "run": run}
