"""Command-line options, added by the WebUI before it parses its arguments."""


def preload(parser):
    parser.add_argument(
        "--animatediff-model-dir",
        type=str,
        default=None,
        help="AnimateDiff: folder with motion-module files (searched recursively); overrides the "
        "folder set in Settings → AnimateDiff. Default: the extension's model/ folder.",
    )
