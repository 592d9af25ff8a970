"""A small Latent Speech-Text Transformer (LST) and a flat baseline that train and score from
lst-data shards. Kept free of heavy imports: `import lst_model` does not load torch."""
