"""The researcher's role: build and submit trains, look at them before trusting them, follow
them along their route, and collect their results.

``train`` builds and pushes a train; ``inspect`` pins a reference and reads a train's spec,
signers and image for review; ``status`` reports where a train is; ``collect`` verifies and
decrypts its results. Nothing here knows about click, rich or exit codes: the CLI renders.
"""
