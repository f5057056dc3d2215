"""The sequencer: the one writer of every state change of the exchange (see `core`)."""

from market.sequencer.core import *  # noqa: F403
from market.sequencer.core import MAX_LISTED_CAPACITY, Sequencer  # noqa: F401
