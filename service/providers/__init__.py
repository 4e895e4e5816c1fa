"""Provider adapters: a pure transform half and a thin transport half each."""
