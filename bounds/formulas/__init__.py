"""The formulas: kl and its inverse, binomial tail inversion, Occam, Catoni, PAC-Bayes,
token-level and corpus bounds, the test-set bound, the δ ledger and `Bound`.

Pure numpy/scipy: nothing here imports torch.
"""
