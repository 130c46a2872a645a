"""Escaping text for LaTeX tables."""

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "—": "---",
    "δ": r"$\delta$",
    "…": r"\ldots{}",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters; δ becomes $\\delta$ and … becomes \\ldots{}."""
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)
