"""``cnnapps serve``: an HTTP service (FastAPI + uvicorn) over the task predictors, with micro-batching and a page."""
