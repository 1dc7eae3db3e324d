"""Tables and charts for humans: dataset statistics, later evaluation reports."""
