"""The pipeline: one certify path for every task and code family (`certify.py`), `sweep.py`,
distributed evaluation (`distributed.py`), and the decoder that builds the evaluated model
(`decoder.py`). Importing the package loads none of them: `bounds.certify` and friends load
them on first use."""
