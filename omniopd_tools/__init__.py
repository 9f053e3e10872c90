"""What builds and serves the models the project trains and tests with: `build_world` trains an offline world's
teacher and student (`python -m omniopd_tools.build_world --world stories`), `serve` puts a model behind an
OpenAI-compatible server on 127.0.0.1 (`python -m omniopd_tools.serve`), `real_models` finds the real models that
run offline (SmolLM2, Gemma-3, llama.cpp's server). It may import the worlds (toyworld/) and the method's package
(omniopd_lib/); neither imports it back."""
