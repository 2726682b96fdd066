"""Label Studio ML backend for MobileSAM: masks for annotators' smart keypoints and rectangles.

`model.MobileSamBackend` (label-studio-ml's `setup` / `predict` / `fit`), served over Label Studio's
ML-backend protocol by `api.create_app` (Flask); run with `mobilesam serve` or
`gunicorn labelstudio_backend._wsgi:app`. Settings: `labelstudio_backend.settings`.
"""
