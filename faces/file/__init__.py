"""plaudit.faces.file: history from JSONL or text files, published posts appended to a JSONL
file, reactions read from a JSONL file that a person or another program writes."""

from ._face import FileConfig, FileFace

__all__: list[str] = ["FileConfig", "FileFace"]
