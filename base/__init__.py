"""Base pieces every room may import (the user-facing error type, the version); imports nothing of expclip."""
