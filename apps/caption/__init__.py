"""Image captioning: a conv encoder, an attention decoder (LSTM or Transformer), beam search, BLEU and CIDEr."""
