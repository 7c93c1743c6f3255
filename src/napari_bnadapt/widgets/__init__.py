"""napari dock widgets (Qt). The core modules never import this package."""
