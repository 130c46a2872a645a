"""Reports: the certificate (JSON, Markdown, LaTeX), plots, progress bars."""
