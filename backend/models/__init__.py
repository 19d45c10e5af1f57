"""Model loading: devices and dtypes, Stable Diffusion components, the one LRU cache every method's weights live in.
Nothing here loads at import; only explicit loader calls touch files (and the network, when allowed)."""
