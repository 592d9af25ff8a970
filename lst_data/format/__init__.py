"""The shard contract and everything that reads it: records, the time-to-frame rule, keys,
patching, the run layout, schema access, the safe tar reader, the verifying shard reader
and the training loader.

A trainer depends on this package alone: it imports no Ray, aligner or speech encoder
(tests/test_layout.py keeps that true). The writers stay with the pipeline (`lst_data.shards`).
"""
