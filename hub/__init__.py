"""edu-hub: the reference implementation of the platform's side of the exchange protocol."""
