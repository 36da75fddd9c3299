"""TensorBoard scalars without TensorBoard: the event-file format is a TFRecord stream of `Event`
protocol buffers, simple enough to write by hand (tensorboard itself would pull in protobuf,
grpcio and more). `tensorboard --logdir DIR` reads what this writes.

TFRecord framing: u64 length, masked crc32c(length), payload, masked crc32c(payload), little
endian. Event: wall_time (1, double), step (2, int64), file_version (3, string), summary (5);
Summary.value (1): tag (1, string), simple_value (2, float).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from ._step_record import StepRecord


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event_bytes(
    *,
    wall_time: float,
    step: int,
    scalars: dict[str, float] | None = None,
    file_version: str | None = None,
) -> bytes:
    msg = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3) + _varint(step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if scalars:
        summary = b"".join(
            _field_bytes(
                1, _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
            )
            for tag, value in scalars.items()
        )
        msg += _field_bytes(5, summary)
    return msg


def record_bytes(payload: bytes) -> bytes:
    header = struct.pack("<Q", len(payload))
    return (
        header
        + struct.pack("<I", _masked_crc(header))
        + payload
        + struct.pack("<I", _masked_crc(payload))
    )


class ScalarWriter:
    """Appends training scalars to one event file in `logdir`."""

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._file = self.path.open("ab")
        self._write(event_bytes(wall_time=time.time(), step=0, file_version="brain.Event:2"))

    def _write(self, payload: bytes) -> None:
        self._file.write(record_bytes(payload))
        self._file.flush()

    def scalars(self, step: int, rec: StepRecord) -> None:
        values = {
            "train/loss": rec.loss,
            "train/lr": rec.lr,
            "train/grad_norm": rec.grad_norm,
            "train/tokens_per_s": rec.tokens_per_s,
        }
        if rec.val_loss is not None:
            values["val/loss"] = rec.val_loss
        self._write(event_bytes(wall_time=time.time(), step=step, scalars=values))

    def close(self) -> None:
        self._file.close()
