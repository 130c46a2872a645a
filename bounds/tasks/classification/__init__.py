"""Classification: labelled examples, exact error counts, Occam bounds."""
