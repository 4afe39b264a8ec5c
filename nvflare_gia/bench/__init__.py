"""Benchmarks behind ``nvflare-gia bench`` (no nvflare import): attack, defenses, overhead."""
