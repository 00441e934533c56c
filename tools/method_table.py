"""The README's table of learnable parameters at ViT-B/16, rendered from the registrations (the one source).

    python -m tools.method_table     # prints the Markdown rows; tests/test_contract.py checks the README holds them
"""
import trainers


def rows():
    yield "| `--trainer` | config | options | learnable |"
    yield "|---|---|---|---:|"
    for name, count in trainers.all_counts():
        opts = f"`{' '.join(count.opts)}`" if count.opts else ""
        yield f"| `{name}` | `{count.config}.yaml` | {opts} | {count.count:,} |"


if __name__ == "__main__":
    print("\n".join(rows()))
