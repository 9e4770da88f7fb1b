"""Tracking: persistent ids for detections across video frames, track summaries, counting, MOT metrics."""
