"""Conventional recommenders (Pop, BPR-MF, SASRec). Kept import-light: modules are loaded by the registry."""
