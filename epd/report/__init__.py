"""Reports over runs: ``python -m epd.report <sweep_dir>`` writes a combined CSV, markdown tables and
PNG plots (TTFT and TPOT vs request rate, one line per configuration; stage-breakdown bars)."""

from epd.report.collect import find_results, load_rows, variant_labels
from epd.report.write import markdown_report, write_report

__all__ = ["find_results", "load_rows", "markdown_report", "variant_labels", "write_report"]
