"""Quality control: rule checks that always run (and, later, the LLM self-check).

Verdicts go to ``qc_verdicts``; rejected pairs are kept and the filtered dataset is a view.
See docs/qc.md.
"""

from medhall.qc.rules import RULES, filter_passed, qc_summary, rule_checks

__all__ = ["RULES", "filter_passed", "qc_summary", "rule_checks"]
