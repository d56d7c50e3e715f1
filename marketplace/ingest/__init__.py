"""Turning a publisher's files into pack content: JSONL of memories, documents chunked along headings and
paragraphs, LoRA adapters checked without torch, cover images. Every reader here is plain Python, works
on bytes already bounded by the upload cap, and refuses bad input with an `ApplicationError` naming the
problem (a 400) before anything is written."""
