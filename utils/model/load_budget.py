"""What loading a PyTorch file may allocate, checked against the file itself before torch.load reads it.

torch.load trusts sizes written inside the file. In the zip format (torch >= 1.6) each record is unpacked into a buffer
of the size the zip's central directory declares: a 3 MB record that deflates 3 GiB of zeros takes 3 GiB. In the
legacy format (torch.save(..., _use_new_zipfile_serialization=False)) each storage is allocated at the element count
its pickle declares, before its bytes are read. A checkpoint holds its tensors' bytes as they are (torch.save stores
zip records uncompressed), so a sane file never unpacks to more than its own size: `check_load_budget` refuses one
that would, or one with an absurd number of records, reading only the zip directory (or scanning the legacy pickle's
opcodes, which runs nothing).
"""
from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

from utils.common.errors import UserError

MAX_EXPANSION = 4  # what loading may allocate, as a multiple of the file's size (torch.save's zip: 1.0)
SLACK_BYTES = 1 << 20  # plus this much: the pickle's own containers and small files' headers
MAX_RECORDS = 100_000  # a YOLOv4-tiny training checkpoint (model, EMA, optimizer state) has about 1,000
ZIP_MAGIC = b"PK\x03\x04"  # what torch.load looks at to choose the zip reader
# bytes per element of the legacy storage classes (torch.FloatStorage, ...); unknown names count as the widest
ELEMENT_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                 "Byte": 1, "Bool": 1, "ComplexFloat": 8, "ComplexDouble": 16}


class LoadBudgetError(UserError, RuntimeError):
    """A model file whose loading would allocate far more memory than the file holds (corrupt, or a bomb)."""


def check_load_budget(path: str | Path) -> None:
    """Raise LoadBudgetError when loading `path` with torch.load would allocate more than MAX_EXPANSION x its size
    (plus SLACK_BYTES), or when its zip holds more than MAX_RECORDS records. Reads the zip directory or the legacy
    pickle's opcodes only."""
    path = Path(path)
    size = path.stat().st_size
    budget = MAX_EXPANSION * size + SLACK_BYTES
    with open(path, "rb") as handle:
        is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC
    declared = _zip_bytes(path) if is_zip else _legacy_bytes(path)
    if declared > budget:
        raise LoadBudgetError(f"{path}: loading it would unpack {declared:,} bytes from a {size:,}-byte file "
                              f"({declared / max(size, 1):,.0f} times its size; a PyTorch checkpoint stores its "
                              "tensors as they are): refused before reading it (a corrupt file or a decompression "
                              "bomb); re-save the weights with torch.save")


def _zip_bytes(path: Path) -> int:
    """The total uncompressed size the zip's central directory declares."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as err:
        raise LoadBudgetError(f"{path} is not a readable PyTorch file: its zip directory is damaged ({err}); "
                              "truncated or corrupt?") from None
    if len(records) > MAX_RECORDS:
        raise LoadBudgetError(f"{path} holds {len(records):,} zip records, more than the {MAX_RECORDS:,} of any "
                              "checkpoint: refused before reading it")
    return sum(record.file_size for record in records)


def _legacy_bytes(path: Path) -> int:
    """The storage bytes that a legacy-format file's pickles declare (0 for other files: torch.load then fails on
    them by itself, allocating nothing large). Scans opcodes only (pickletools.genops): nothing is built or run."""
    declared = 0
    with open(path, "rb") as handle:
        for _ in range(4):  # magic number, protocol, sys_info, then the object pickle with the storages
            try:
                declared += sum(_storage_bytes(handle))
            except (ValueError, EOFError):  # not a pickle (any more): what follows is raw data or another format
                break
    return declared


def _storage_bytes(handle) -> list[int]:
    """Bytes of each storage persistent id ('storage', <Type>Storage, key, location, numel, view) in one pickle.

    A small stack machine over the opcodes: constants, memo and tuples are followed (the ids are built from them);
    every other value is a placeholder."""
    sizes, stack, marks, memo = [], [], [], {}
    for opcode, argument, _ in pickletools.genops(handle):
        name, before, after = opcode.name, opcode.stack_before, opcode.stack_after
        if name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else argument] = stack[-1] if stack else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(argument))
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "BINPERSID":
            sizes.append(_storage_size(stack.pop() if stack else None))
            stack.append(None)
        elif pickletools.markobject in before:  # TUPLE, LIST, DICT, SETITEMS, APPENDS, ...: up to the last mark
            start = marks.pop() if marks else 0
            items = tuple(stack[start:])
            del stack[max(start - before.index(pickletools.markobject), 0):]
            stack.extend([items if name == "TUPLE" else None] * len(after))
        else:
            popped = stack[len(stack) - len(before):] if before else []
            del stack[len(stack) - len(popped):]
            if name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                stack.append(tuple(popped))
            elif name == "STACK_GLOBAL":
                stack.append(" ".join(map(str, popped)))
            else:
                stack.extend([argument if not before else None] * len(after))
    return sizes


def _storage_size(persistent_id: object) -> int:
    if not (isinstance(persistent_id, tuple) and len(persistent_id) >= 5 and persistent_id[0] == "storage"):
        return 0
    kind, numel = str(persistent_id[1]), persistent_id[4]
    element = next((n for name, n in ELEMENT_BYTES.items() if kind.endswith(f" {name}Storage")), 16)
    return element * numel if isinstance(numel, int) and numel > 0 else 0
