"""Language modelling: token corpora, causal scoring, token- and document-level bounds."""
