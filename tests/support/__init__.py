"""Test support: stand-ins and kits the tests share (not tests themselves).

``stationkit`` (station folders and configs, trains built by the real engine and signed),
``authservers`` (a Basic/bearer token issuer and TLS helpers in front of the real registry),
``harbor_standin`` (Harbor's API v2.0, written from its swagger, in front of a real registry).
"""
