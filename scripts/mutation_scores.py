"""The mutation score per module from mutmut's results: a Markdown table for docs/testing.md."""
import subprocess
from collections import Counter, defaultdict

MUTMUT = [".venv/bin/mutmut"]


def main():
    lines = subprocess.run([*MUTMUT, "results", "--all", "true"], capture_output=True, text=True).stdout
    by_module = defaultdict(Counter)
    for line in lines.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if not name:
            continue
        # `common.domain.validation.x_parse_id__mutmut_4`: the module is everything before the mangled function name.
        module = name.split(".x")[0] if ".x" in name else name.rsplit(".", 1)[0]
        by_module[module][status] += 1
    print("| module | mutants | killed | survived | other | score |")
    print("| --- | --- | --- | --- | --- | --- |")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        other = total - counts["killed"] - counts["survived"]
        tested = counts["killed"] + counts["survived"]
        score = f"{counts['killed'] / tested:.0%}" if tested else "-"
        print(f"| {module} | {total} | {counts['killed']} | {counts['survived']} | {other} | {score} |")


if __name__ == "__main__":
    main()
