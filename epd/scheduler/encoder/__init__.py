"""Encoder-assignment policies, one file each (registered in ``epd.scheduler.ENCODER_POLICIES``)."""
