"""The PGPS schedule: the curriculum of patch and batch sizes (pure) and the oversampling rules."""

from pgps_data.schedule.curriculum import Curriculum, Stage

__all__ = ["Curriculum", "Stage"]
