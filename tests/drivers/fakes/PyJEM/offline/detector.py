from PyJEM.detector import Detector, get_attached_detector  # noqa: F401
