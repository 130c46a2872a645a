"""Built-in architectures, Hugging Face causal LMs and the training loops."""
