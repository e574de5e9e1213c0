"""Prints the hostile-input suite's cases by outcome (the table README quotes); gives the tests that may
train the tiny translator the time to (tests/vllm_support.py)."""
from collections import Counter, defaultdict


def pytest_collection_modifyitems(session, config, items):
    from tests.vllm_support import TRANSLATOR_FIXTURES, may_train_translator

    for item in items:
        if TRANSLATOR_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("timeout") is None:
            item.add_marker(may_train_translator)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.hostile import OUTCOMES, RECORDED

    if not RECORDED:
        return
    by_finding: dict[str, Counter] = defaultdict(Counter)
    for row in RECORDED:
        by_finding[row["finding"]][row["outcome"]] += 1
    write = terminalreporter.write_line
    write("")
    write("hostile-input cases by outcome (tests/hostile.py)")
    write("| finding | " + " | ".join(OUTCOMES) + " | cases |")
    write("|---|" + "---:|" * (len(OUTCOMES) + 1))
    for finding in sorted(by_finding):
        counts = by_finding[finding]
        write(f"| {finding} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + f" | {sum(counts.values())} |")
    total = Counter(row["outcome"] for row in RECORDED)
    write("| **all** | " + " | ".join(str(total[o]) for o in OUTCOMES) + f" | {len(RECORDED)} |")
