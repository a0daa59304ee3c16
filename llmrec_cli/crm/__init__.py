"""Conventional recommenders (Pop, BPR-MF, SASRec, GRU4Rec, BERT4Rec, LightGCN). Kept import-light: modules are loaded by the registry."""
