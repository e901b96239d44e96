"""The import paths of the seed release keep working and name the same objects as their homes."""

from __future__ import annotations

import importlib

from twisted.trial.unittest import TestCase

SEED_PATHS = {
    "txacme.endpoint": ("txacme.serving.endpoint", ["AutoTLSEndpoint"]),
    "txacme.service": ("txacme.issuing.service", ["AcmeIssuingService"]),
    "txacme.store": ("txacme.stores.directory", ["DirectoryStore"]),
    "txacme.client": ("txacme.protocol.client", ["Client"]),
    "txacme.urls": (
        "txacme.protocol.urls",
        ["LETSENCRYPT_DIRECTORY", "LETSENCRYPT_STAGING_DIRECTORY"],
    ),
    "txacme.interfaces": ("txacme.interfaces", ["ICertificateStore", "IResponder"]),
    "txacme.challenges": ("txacme.challenges.http01", ["HTTP01Responder"]),
    "txacme.testing": ("txacme.stores.memory", ["MemoryStore"]),
}


class SeedPathTests(TestCase):
    def test_seed_names_are_their_homes_objects(self) -> None:
        """Each name the seed documented imports from its seed path, as its home's object."""
        for seed, (home, names) in SEED_PATHS.items():
            seed_module = importlib.import_module(seed)
            home_module = importlib.import_module(home)
            for name in names:
                home_object = getattr(home_module, name)
                self.assertIs(getattr(seed_module, name), home_object, f"{seed}.{name}")

    def test_all_lists_only_real_names(self) -> None:
        """Every name in a re-exporting module's ``__all__`` exists."""
        for seed in SEED_PATHS:
            module = importlib.import_module(seed)
            for name in getattr(module, "__all__", ()):
                self.assertTrue(hasattr(module, name), f"{seed}.{name}")
