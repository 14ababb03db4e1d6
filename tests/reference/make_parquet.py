"""Parquet twins of the project's JSON Lines datasets, written by pyarrow as the Hub's parquet
converter and `datasets.push_to_hub` write them, for the tests that read parquet.

    python3 tests/reference/make_parquet.py   # needs pyarrow

Writes into tests/reference/parquet/:
- alpaca.parquet: datasets/alpaca_sample.jsonl (snappy, the default; row groups of 10 rows, so
  the records span four groups);
- messages.parquet: datasets/identity_eval.jsonl (`messages` as list<struct<role, content>>;
  zstd);
- prompt_completion.jsonl and .parquet: TRL's standard form, from datasets/parity_eval.jsonl
  (the prompt is the instruction, the completion a space and the answer; lz4);
- chat_completion.jsonl and .parquet: TRL's conversational form, from
  datasets/identity_eval.jsonl (the user turn as the prompt, the assistant turn as the
  completion; gzip);
- bad_wrong_type.parquet: Alpaca columns with `output` as int64 numbers;
- bad_missing_column.parquet: Alpaca without an `output` column.
"""

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/reference/parquet"


def read(name):
    with open(ROOT / "datasets" / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(name, rows):
    with open(OUT / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_parquet(name, rows, **options):
    pq.write_table(pa.Table.from_pylist(rows), OUT / name, **options)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write_parquet("alpaca.parquet", read("alpaca_sample.jsonl"), row_group_size=10)
    write_parquet("messages.parquet", read("identity_eval.jsonl"), compression="zstd")

    standard = [
        {"prompt": r["instruction"], "completion": " " + r["output"]}
        for r in read("parity_eval.jsonl")
    ]
    write_jsonl("prompt_completion.jsonl", standard)
    write_parquet("prompt_completion.parquet", standard, compression="lz4")

    conversational = [
        {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
        for r in read("identity_eval.jsonl")
    ]
    write_jsonl("chat_completion.jsonl", conversational)
    write_parquet("chat_completion.parquet", conversational, compression="gzip")

    write_parquet(
        "bad_wrong_type.parquet",
        [{"instruction": "Is 4821 even or odd?", "output": 1}, {"instruction": "x", "output": 0}],
    )
    write_parquet("bad_missing_column.parquet", [{"instruction": "Is 4821 even or odd?"}])


if __name__ == "__main__":
    main()
