#!/usr/bin/python3
# Writes the pandas-layout fixtures of tests/test_data.cpp from the first 16 jets of
# reference_format_sample.h5, with pandas itself (Debian python3-pandas, python3-tables):
#   pandas_fixed_sample.h5: df.to_hdf(path, "table"), pandas' default "fixed" format, one key
#   pandas_layouts_sample.h5, one key per layout:
#     /jets      format="table" under another key
#     /shuffled  format="table", columns in a shuffled order (blocks follow the new order)
#     /mixed     fixed; float64 constituents beside float32 truth, int8 label, int16 ttv
#     /no_e17    table without E_17;  /no_label  table without is_signal_new
#     /text_label  table whose is_signal_new holds strings
# Usage (from tests/data): /usr/bin/python3 make_pandas_layouts.py
import numpy as np
import pandas as pd

ROWS = 16
df = pd.read_hdf("reference_format_sample.h5", "table").iloc[:ROWS]
small = dict(complevel=9, complib="zlib")
table = dict(format="table", index=False, **small)  # no PyTables index: a smaller file
df.to_hdf("pandas_fixed_sample.h5", "table", mode="w", **small)

out = "pandas_layouts_sample.h5"
df.to_hdf(out, "jets", mode="w", **table)
columns = list(df.columns)
np.random.default_rng(7).shuffle(columns)
df[columns].to_hdf(out, "shuffled", **table)
mixed = df.copy()
constituents = [c for c in df.columns if c.split("_")[0] in ("E", "PX", "PY", "PZ")]
mixed[constituents] = mixed[constituents].astype("float64")
mixed["is_signal_new"] = mixed["is_signal_new"].astype("int8")
mixed["ttv"] = mixed["ttv"].astype("int16")
mixed.to_hdf(out, "mixed", **small)
df.drop(columns=["E_17"]).to_hdf(out, "no_e17", **table)
df.drop(columns=["is_signal_new"]).to_hdf(out, "no_label", **table)
text = df.copy()
text["is_signal_new"] = text["is_signal_new"].map({0: "qcd", 1: "top"})
text.to_hdf(out, "text_label", **table)
