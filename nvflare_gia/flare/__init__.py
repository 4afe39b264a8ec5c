"""FLARE adapters: the only part of nvflare_gia that imports nvflare."""
