"""The exchange protocol shared by agent and hub: keys, package format v1, canonical values, digests."""
