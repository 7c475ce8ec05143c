"""Serving the pick (docs/serving.md, docs/architecture.md §11): `tuner serve` puts a registered tuner
model behind a Ray Serve application with dynamic batching, and `tuner loadtest` measures a
service the way MLPerf does, with LoadGen's open-loop scenarios over HTTP.

    spec.py      ServeSpec: what one service runs (the model, replicas x threads, batching,
                 request limits); validated, plain values, what a Serve config file carries
    source.py    MODEL_URI (models:/..., runs:/..., or a search's output folder) -> the
                 registered model, its loader config and its input shape
    payload.py   request bodies (JPEG/PNG, .npy, MLflow JSON) -> rows; outputs -> answers;
                 BadRequest names what is wrong (no Ray here: unit-tested in milliseconds)
    app.py       the Ray Serve deployment: @serve.batch over the artifact's own runner
    service.py   start Ray and Serve, wait until the service answers, serve until a signal
    export.py    a Serve config file (`serve run` / `serve deploy`) and a KubeRay RayService
    loadtest.py  MLPerf LoadGen over HTTP: SingleStream, Server (Poisson), Offline
    results.py   a load test's figures as an MLflow run
"""
