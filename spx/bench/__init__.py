"""Scoring (normalizer, WER/CER, bootstrap CIs, RTF, MOS proxies) and the comparison report."""
