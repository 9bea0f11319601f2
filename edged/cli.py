"""``edged`` command line: ``run`` (the daemon), ``check`` (config, models, audio, broker) and
``diarize`` (the streaming pipeline over files or stdin)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from edged.config import DEFAULT_PATH, SpeakersConfig
from edged.diarize.params import PipelineParams
from edged.diarize.presets import CHOICES as PRESET_CHOICES
from edged.diarize.presets import resolve as resolve_preset
from edged.errors import BundleError, ConfigError, EdgedError

if TYPE_CHECKING:
    from edged.diarize.pipeline import StreamingDiarizer
    from edged.sources.base import AudioSource

log = logging.getLogger("edged")
EX_CONFIG = 78  # sysexits.h; the unit's RestartPreventExitStatus: a bad config is not retried
# start-up failures that restarting cannot fix: the config, the model bundle, an unusable spool folder
CONFIG_CLASS = (ConfigError, BundleError)


def _positive_threads(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edged", description="Live speaker diarization on the edge.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("diarize", help="diarize audio files (or raw PCM on stdin) with the streaming pipeline",
                       description="Writes one RTTM and one JSON-lines event log per input.")
    d.add_argument("inputs", nargs="+", metavar="FILE", help="WAV/FLAC/OGG files (any rate, any channels), or - for raw PCM on stdin")
    d.add_argument("--models", type=Path, default=Path(os.environ.get("EDGED_MODELS", "models/default")),
                   help="model bundle folder (default: $EDGED_MODELS or models/default)")
    d.add_argument("--output", type=Path, default=Path("out"), help="folder for <name>.rttm and <name>.events.jsonl (default: out)")
    d.add_argument("--variant", choices=("fp32", "int8"), default="int8", help="model precision (default int8)")
    d.add_argument("--preset", choices=PRESET_CHOICES, default=None,
                   help="hyper-parameters: bundle (default: the bundle's tuned preset for the latency) or one of "
                        "diart's (ami, dihard3, voxconverse)")
    d.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML file whose pipeline: section sets the parameters (as in edged run)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="pipeline.KEY=VALUE",
                   help="override one pipeline parameter (repeatable)")
    d.add_argument("--latency", type=float, default=None, help="output latency in seconds, step..duration (default: 5)")
    d.add_argument("--clustering", choices=("incremental", "uisrnn"), default=None,
                   help="speaker clustering back-end (uisrnn needs a bundle with a UIS-RNN model; default incremental)")
    d.add_argument("--uisrnn-lag", type=int, default=None, help="UIS-RNN fixed lag in steps (default 0)")
    d.add_argument("--threads", type=_positive_threads, default=1, help="onnxruntime intra-op threads (default 1, as on a Pi)")
    d.add_argument("--provider", action="append", default=None, metavar="NAME",
                   help="onnxruntime execution provider, repeatable, in order (default CPUExecutionProvider)")
    d.add_argument("--realtime", action="store_true", help="replay inputs at wall-clock speed, like a microphone")
    d.add_argument("--rate", type=int, default=16000, help="sample rate of raw PCM on stdin (default 16000)")
    d.add_argument("--channels", type=int, default=1, help="channels of raw PCM on stdin (default 1)")
    d.add_argument("--dtype", default="int16", choices=("int16", "int32", "float32"), help="raw PCM sample type (default int16)")
    d.add_argument("--device-id", default="file", help="device_id written in the event records (default file)")
    d.add_argument("--profiles", type=Path, default=None,
                   help="voice profiles folder (edged enroll): enrolled voices get their names in RTTM and events")
    d.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity one chunk of a voice needs to take an enrolled name "
                        f"(default {SpeakersConfig.threshold:g}, the built-in speakers.threshold)")
    d.add_argument("--voice-threshold", type=float, default=None,
                   help="cosine similarity an anonymous speaker's accumulated voice needs to take an enrolled name "
                        f"(default {SpeakersConfig.voice_threshold:g}, the built-in speakers.voice_threshold)")
    d.add_argument("-v", "--verbose", action="store_true")

    for name, text in (("run", "run the daemon: audio -> speaker turns on MQTT (the systemd unit's ExecStart)"),
                       ("check", "check the config, model bundle, audio device, spool and broker, one line each"),
                       ("config", "print the effective config (file < environment < --set) as YAML, secrets redacted")):
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("--config", type=Path, default=Path(os.environ.get("EDGED_CONFIG", DEFAULT_PATH)),
                       help=f"YAML config (default: $EDGED_CONFIG or {DEFAULT_PATH})")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one config key (repeatable; also EDGED__SECTION__KEY=VALUE in the environment)")
        c.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name == "run":
            c.add_argument("--replay-speed", type=float, default=1.0,
                           help="with audio.source=file: replay this many times faster than real time (tests, demos)")
    sub.add_parser("devices", help="list the audio input devices (names and indexes for audio.device)")
    _add_speaker_commands(sub)
    listen = sub.add_parser("listen", help="subscribe to a device and print its speaker turns as they arrive",
                            description="Prints turn, active and status messages; with --count/--timeout/--until-offline "
                                        "it ends and prints the turn count and the latency after each turn's end.")
    listen.add_argument("--host", default="localhost")
    listen.add_argument("--port", type=int, default=1883)
    listen.add_argument("--prefix", default=None, help="topic prefix (default edged/<device-id>)")
    listen.add_argument("--device-id", default=None, help="device id, for the default prefix")
    listen.add_argument("--username", default=None)
    listen.add_argument("--count", type=int, default=None, help="stop after this many turns")
    listen.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    listen.add_argument("--until-offline", action="store_true", help="stop when the device publishes offline")
    listen.add_argument("--json", action="store_true", help="one JSON object per message")
    return parser


def _add_speaker_commands(sub) -> None:
    """``enroll`` and ``speakers list|remove|rename`` (voice profiles; see edged.service.enroll)."""
    profiles_help = "voice profiles folder (default: $EDGED_PROFILES or /var/lib/edged/speakers)"
    e = sub.add_parser("enroll", help="build a voice profile for NAME from recordings of that person alone",
                       description="Needs at least 5 s of speech of one voice; the profile stays on this device.")
    e.add_argument("name", metavar="NAME")
    e.add_argument("audio", nargs="+", metavar="AUDIO", help="WAV/FLAC/OGG recordings of NAME alone")
    e.add_argument("--profiles", type=Path, default=None, help=profiles_help)
    e.add_argument("--models", type=Path, default=Path(os.environ.get("EDGED_MODELS", "models/default")),
                   help="model bundle folder (default: $EDGED_MODELS or models/default)")
    e.add_argument("--variant", choices=("fp32", "int8"), default="int8", help="model precision (default int8)")
    e.add_argument("--replace", action="store_true", help="overwrite an existing profile of NAME")
    sp = sub.add_parser("speakers", help="list, remove or rename enrolled speakers")
    ssub = sp.add_subparsers(dest="speakers_command", required=True)
    for name, text, args in (("list", "list the enrolled speakers", ()), ("remove", "forget an enrolled speaker", ("name",)),
                             ("rename", "rename an enrolled speaker", ("old", "new"))):
        c = ssub.add_parser(name, help=text, description=text)
        for arg in args:
            c.add_argument(arg, metavar=arg.upper())
        c.add_argument("--profiles", type=Path, default=None, help=profiles_help)
        if name == "rename":
            c.add_argument("--replace", action="store_true", help="overwrite an existing profile named NEW")


def cmd_speakers(args: argparse.Namespace) -> int:
    """``edged enroll`` / ``edged speakers ...``: one line of result, or one line of error."""
    from edged.profiles.store import ProfileStore
    from edged.service.enroll import default_profiles, enroll_files, list_lines

    store = ProfileStore(args.profiles or default_profiles())
    if args.command == "enroll":
        from edged.diarize.identify import check_name
        from edged.models.blocks import load_models
        from edged.profiles.store import ProfileError

        check_name(args.name)  # bad names and taken names before the models load
        if not args.replace and store.get(args.name) is not None:
            raise ProfileError(f"speaker {args.name!r} is already enrolled in {store.folder}; add --replace to "
                               "overwrite it, or choose another name")
        profile = enroll_files(load_models(args.models, args.variant), store, args.name, args.audio, args.replace)
        print(f"enrolled {profile.name}: {profile.speech_s:.1f} s of speech from {len(args.audio)} recording(s) "
              f"-> {store.folder}")
    elif args.speakers_command == "list":
        lines = list_lines(store)
        for line in lines:
            print(line)
        if not lines:
            print(f"no speakers enrolled in {store.folder}", file=sys.stderr)
    elif args.speakers_command == "remove":
        store.remove(args.name)
        print(f"removed {args.name}")
    else:
        store.rename(args.old, args.new, replace=args.replace)
        print(f"renamed {args.old} -> {args.new}")
    return 0


def open_input(name: str, args: argparse.Namespace, sample_rate: int) -> AudioSource:
    """A file, or raw PCM on stdin for ``-``; paced at wall-clock speed with ``--realtime``."""
    from edged.sources.file import FileSource, PcmSource

    speed = 1.0 if args.realtime else None
    if name == "-":
        return PcmSource(sys.stdin.buffer, args.rate, args.channels, args.dtype, sample_rate, speed=speed)
    return FileSource(name, sample_rate, speed=speed)


def diarize_one(name: str, diarizer: StreamingDiarizer, args: argparse.Namespace) -> dict:
    """Run one input through the pipeline; write its RTTM and event log; return a summary."""
    from edged.diarize.events import TurnEvent
    from edged.diarize.stream import diarize_source
    from edged.messages import ActivityMessage, TurnMessage, format_rttm

    uri = "stdin" if name == "-" else Path(name).stem
    args.output.mkdir(parents=True, exist_ok=True)
    rttm_path = args.output / f"{uri}.rttm"
    events_path = args.output / f"{uri}.events.jsonl"
    source = open_input(name, args, diarizer.sample_rate)
    turns: list[TurnMessage] = []
    started = time.perf_counter()
    # Each record is written and flushed as it comes, so a crash keeps what was produced; the
    # records are the daemon's MQTT payloads (no spool here: seq is the turn's stream_seq).
    with open(events_path, "w", encoding="utf-8") as log_file:
        for event in diarize_source(source, diarizer):
            if isinstance(event, TurnEvent):
                message = TurnMessage.from_event(event, args.device_id, seq=event.stream_seq)
                turns.append(message)
                payload = message.payload()
            else:
                payload = ActivityMessage.from_event(event, args.device_id).payload()
            log_file.write(json.dumps(payload, ensure_ascii=False) + "\n")
            log_file.flush()
    elapsed = time.perf_counter() - started
    rttm_path.write_text(format_rttm(uri, turns), encoding="utf-8")
    audio_seconds = source.seconds_read
    return {
        "uri": uri,
        "audio_s": audio_seconds,
        "turns": len(turns),
        "speakers": len({t.speaker for t in turns}),
        "step_ms_p50": diarizer.stats.percentile(50),
        "rtf": elapsed / audio_seconds if audio_seconds else float("nan"),
        "rttm": str(rttm_path),
    }


def diarize_params(args: argparse.Namespace, presets) -> PipelineParams:
    """The bundle's preset (or ``--preset``), then ``--config``'s pipeline section, ``--set``,
    and the explicit flags, each over the one before."""
    section: dict = {}
    if args.config is not None or args.overrides:
        from edged.settings import read_yaml, set_path  # YAML only when asked for

        data = read_yaml(args.config) if args.config is not None else {}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip().startswith("pipeline."):
                raise ConfigError(f"--set {item!r}: edged diarize takes pipeline.KEY=VALUE only")
            set_path(data, key.strip(), value)
        section = data.get("pipeline") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{args.config}: pipeline must be a mapping of keys")
    values = {k: v for k, v in section.items() if k != "preset"}
    flags = {"latency": args.latency, "clustering": args.clustering, "uisrnn_lag": args.uisrnn_lag}
    values.update({k: v for k, v in flags.items() if v is not None})
    return resolve_preset(args.preset or section.get("preset"), presets, values)


def cmd_diarize(args: argparse.Namespace) -> int:
    from edged.diarize.pipeline import StreamingDiarizer
    from edged.models.blocks import load_models

    providers = tuple(args.provider) if args.provider else ("CPUExecutionProvider",)
    models = load_models(args.models, args.variant, threads=args.threads, providers=providers)
    params = diarize_params(args, None if models.bundle.presets is None else models.bundle.presets.by_latency)
    identifier = None
    if args.profiles is not None:
        from edged.profiles.store import ProfileStore
        from edged.service.enroll import load_identifier

        if not args.profiles.is_dir():
            raise ConfigError(f"--profiles {args.profiles} is not a folder; enroll speakers first (edged enroll NAME "
                              f"AUDIO... --profiles {args.profiles})")
        threshold = SpeakersConfig.threshold if args.threshold is None else args.threshold
        voice = SpeakersConfig.voice_threshold if args.voice_threshold is None else args.voice_threshold
        for flag, value in (("--threshold", threshold), ("--voice-threshold", voice)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{flag} {value:g} is out of range; use a cosine similarity 0..1")
        identifier = load_identifier(ProfileStore(args.profiles), models, threshold, voice)
    failed = 0
    for name in args.inputs:
        diarizer = StreamingDiarizer(models, params, identifier=identifier)
        try:
            s = diarize_one(name, diarizer, args)
        except EdgedError as exc:
            print(f"edged: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{s['uri']}: {s['audio_s']:.1f} s, {s['turns']} turns, {s['speakers']} speakers, "
              f"{s['step_ms_p50']:.1f} ms/step (median), RTF {s['rtf']:.3f} -> {s['rttm']}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = args.command == "diarize" and not args.verbose
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="edged: %(levelname)s: %(name)s: %(message)s" if args.command == "run"
                        else "edged: %(levelname)s: %(message)s")
    try:
        if args.command == "diarize":
            return cmd_diarize(args)
        if args.command in ("enroll", "speakers"):
            return cmd_speakers(args)
        if args.command == "run":
            from edged.service.daemon import Daemon

            if args.verbose:
                args.overrides.append("logging.level=debug")
            return Daemon(args.config, args.overrides, replay_speed=args.replay_speed).run()
        if args.command == "devices":
            from edged.sources.alsa import list_devices

            lines = list_devices()
            for line in lines:
                print(line)
            if not lines:
                print("no audio input devices found; plug in a microphone, check 'arecord -l' and the audio group",
                      file=sys.stderr)
            return 0 if lines else 1
        if args.command == "listen":
            from edged.service.listen import listen

            if args.prefix is None and args.device_id is None:
                raise EdgedError("listen needs --prefix or --device-id (topics are edged/<device-id>/...)")
            prefix = args.prefix or f"edged/{args.device_id}"
            got = listen(args.host, args.port, prefix, count=args.count, timeout=args.timeout, as_json=args.json,
                         until_offline=args.until_offline, username=args.username,
                         password=os.environ.get("EDGED_MQTT_PASSWORD"))
            print(f"# {got.summary()}", file=sys.stderr)
            return 0
        if args.command == "config":
            import yaml

            from edged.settings import config_to_dict, load_config

            path = args.config if args.config.exists() or args.config != DEFAULT_PATH else None
            config = load_config(path, args.overrides)
            print(yaml.safe_dump({"device_id": config.device, **{k: v for k, v in config_to_dict(config).items()
                                                               if k != "device_id"}}, sort_keys=False), end="")
            return 0
        if args.command == "check":
            from edged.service.check import run_checks

            return run_checks(args.config, args.overrides)
    except CONFIG_CLASS as exc:
        print(f"edged: error: {exc}", file=sys.stderr)
        return EX_CONFIG if args.command == "run" else 1
    except EdgedError as exc:
        print(f"edged: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
