"""One-line explanations of endpoint-string mistakes, and the txacme log level."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import reactor
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.harness.logcapture import txacme_log_level
from tests.test_endpoint_parsing import parse
from txacme.config.endpoint import endpoint_from_config
from txacme.config.hints import did_you_mean, explain_endpoint_error, running_under_twistd
from txacme.config.plugin import ACMEServerParser
from txacme.errors import ConfigurationError
from txacme.logs import Logger, get_log_level, parse_log_level, set_log_level


def certs_dir(test: SynchronousTestCase) -> str:
    """A certificate directory removed when ``test`` ends."""
    certs = tempfile.mkdtemp()
    test.addCleanup(shutil.rmtree, certs, True)
    return certs


class DidYouMeanTests(SynchronousTestCase):
    def test_near_misses(self) -> None:
        choices = {"email", "directory", "ca_file", "check_interval"}
        self.assertEqual(did_you_mean("emial", choices), "email")
        self.assertEqual(did_you_mean("directroy", choices), "directory")
        self.assertEqual(did_you_mean("cafile", choices), "ca_file")
        self.assertIsNone(did_you_mean("backlog", choices))

    def test_misspelt_keyword_of_ours(self) -> None:
        with self.assertRaises(ConfigurationError) as raised:
            parse("le:/c:tcp:443:emial=a@example.test")
        self.assertEqual(
            str(raised.exception),
            "le: unknown keyword 'emial' in the endpoint string: did you mean 'email'?",
        )

    def test_misspelt_directory_before_missing_directory(self) -> None:
        """``directroy=`` is named, not reported as a missing ``directory=``."""
        with self.assertRaisesRegex(ConfigurationError, "did you mean 'directory'"):
            parse("acme:/c:tcp:443:directroy=https\\://ca.test/dir")

    def test_sub_endpoint_keywords_are_not_misspellings(self) -> None:
        config = parse("le:/c:tcp:443:interface=127.0.0.1:backlog=10")
        self.assertEqual(config.sub_endpoint, "tcp:443:interface=127.0.0.1:backlog=10")

    def test_unknown_sub_endpoint_keyword(self) -> None:
        message = explain_endpoint_error(
            "le: sub-endpoint",
            "tcp:443:backlgo=1",
            TypeError("_parseTCP() got an unexpected keyword argument 'backlgo'"),
            {"email"},
        )
        self.assertEqual(
            message,
            "le: sub-endpoint 'tcp:443:backlgo=1': unknown keyword 'backlgo': "
            "did you mean 'backlog'?",
        )

    def test_unknown_keyword_through_twisted(self) -> None:
        """Twisted's TypeError for an unknown keyword becomes a line naming it."""
        certs = certs_dir(self)
        config = parse(f"le:{certs}:tcp:0:frobnicate=1")
        with self.assertRaises(ConfigurationError) as raised:
            endpoint_from_config(reactor, config)
        self.assertIn("unknown keyword 'frobnicate'", str(raised.exception))
        self.assertNotIn("_parseTCP", str(raised.exception))


class CutURLTests(SynchronousTestCase):
    def test_directory(self) -> None:
        with self.assertRaises(ConfigurationError) as raised:
            parse("acme:/c:tcp:443:directory=https://ca.test/dir")
        message = str(raised.exception)
        self.assertIn("directory=https looks like a URL cut at its first colon", message)
        self.assertIn("directory=https\\://ca.test/dir", message)

    def test_url_with_port(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "directory=https looks like a URL"):
            parse("acme:/c:tcp:443:key=ec256:directory=https://ca.test:14000/dir")

    def test_store_url(self) -> None:
        with self.assertRaisesRegex(ConfigurationError, "store=postgresql looks like a URL"):
            parse("le:/c:tcp:443:store=postgresql://db/certs")

    def test_escaped_url_passes(self) -> None:
        config = parse("acme:/c:tcp:443:directory=https\\://ca.test\\:14000/dir")
        self.assertEqual(config.directory_url, "https://ca.test:14000/dir")


class SystemdTests(SynchronousTestCase):
    def test_no_descriptors(self) -> None:
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "LISTEN_FDS"})
        certs = certs_dir(self)
        config = parse(f"le:{certs}:systemd:domain=INET:index=0")
        with self.assertRaises(ConfigurationError) as raised:
            endpoint_from_config(reactor, config)
        message = str(raised.exception)
        self.assertIn("systemd passed this process no such listening socket", message)
        self.assertIn("LISTEN_FDS is not set", message)
        self.assertNotIn("list index out of range", message)


class PluginTests(SynchronousTestCase):
    def test_not_twistd_raises(self) -> None:
        """Outside twistd a bad string raises ConfigurationError, not SystemExit."""
        self.assertFalse(running_under_twistd())
        parser = ACMEServerParser("le", "https://ca.test/dir")
        with self.assertRaises(ConfigurationError):
            parser.parseStreamServer(reactor, "/nonexistent", "tcp", "0", emial="x")


class LogLevelTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_log_level("DEBUG"), LogLevel.debug)
        self.assertEqual(parse_log_level("warning"), LogLevel.warn)
        with self.assertRaisesRegex(ConfigurationError, "log_level='loud'.*debug, info"):
            parse_log_level("loud")

    def test_keyword(self) -> None:
        self.assertEqual(parse("le:/c:tcp:443:log_level=debug").log_level, "debug")
        self.assertIsNone(parse("le:/c:tcp:443").log_level)
        with self.assertRaisesRegex(ConfigurationError, "log_level="):
            parse("le:/c:tcp:443:log_level=verbose")

    def test_endpoint_sets_the_level(self) -> None:
        txacme_log_level(self, "info")
        certs = certs_dir(self)
        endpoint_from_config(reactor, parse(f"le:{certs}:tcp:0:log_level=warn"))
        self.assertEqual(get_log_level(), LogLevel.warn)

    def test_logger_filters(self) -> None:
        txacme_log_level(self, "info")
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        log = Logger(namespace="txacme.test")
        log.debug("hidden")
        log.info("shown")
        set_log_level("debug")
        log.debug("now shown")
        set_log_level(LogLevel.error)
        log.warn("hidden too")
        log.critical("always")
        self.assertEqual(
            [e["log_format"] for e in events if e.get("log_namespace") == "txacme.test"],
            ["shown", "now shown", "always"],
        )


class AriWarningTests(SynchronousTestCase):
    """Renewal information that cannot be fetched: one warning an hour, not one per name."""

    def test_one_warning_an_hour(self) -> None:
        from datetime import datetime, timedelta, timezone

        from twisted.internet.defer import Deferred, fail

        from txacme.issuing import tracking
        from txacme.testing import make_certificate

        txacme_log_level(self, "info")
        self.patch(tracking, "_last_ari_warning", [None])
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        class Client:
            def renewal_info(self, certificate: object) -> Deferred[object]:
                return fail(RuntimeError("404 from the CA"))

        moment = [datetime(2026, 1, 1, tzinfo=timezone.utc)]

        def fetch(name: str) -> None:
            cert = make_certificate([name])
            d = Deferred.fromCoroutine(
                tracking.fetch_renewal_info(
                    name,
                    tracking.NameState(),
                    cert,
                    Client(),
                    lambda: moment[0],  # type: ignore[arg-type]
                )
            )
            self.assertIsNone(self.successResultOf(d))

        for i in range(100):
            fetch(f"n{i}.example.test")
        moment[0] += timedelta(hours=2)
        fetch("later.example.test")
        warnings = [e for e in events if e.get("log_namespace") == "txacme.issuing.tracking"]
        self.assertEqual([e["name"] for e in warnings], ["n0.example.test", "later.example.test"])
        self.assertTrue(all(e["log_level"] == LogLevel.warn for e in warnings))
