//! `--serve NAME=KIND:WHERE` specifications.

use std::path::PathBuf;

/// What to serve under a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendSpec {
    /// `NAME=gguf:PATH`: the embedded engine on a GGUF file.
    Gguf {
        /// Name clients use.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// `NAME=ollama-model:MODEL[:TAG]`: the embedded engine on a model from the local
    /// Ollama store (see [`super::ollama_store`]), without Ollama running.
    OllamaModel {
        /// Name clients use.
        name: String,
        /// The model's name in the store, e.g. `llama3.2:1b`.
        model: String,
    },
    /// `NAME=ollama:URL[#MODEL]`: an Ollama server (MODEL defaults to NAME).
    Ollama {
        /// Name clients use.
        name: String,
        /// Base URL, e.g. `http://127.0.0.1:11434`.
        url: String,
        /// The model's name on that server.
        model: String,
    },
    /// `NAME=openai:URL[#MODEL]`: an OpenAI-compatible server (MODEL defaults to NAME).
    OpenAi {
        /// Name clients use.
        name: String,
        /// Base URL up to and including `/v1`, e.g. `http://127.0.0.1:8080/v1`.
        url: String,
        /// The model's name on that server.
        model: String,
    },
}

/// A malformed `--serve` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--serve {spec:?}: {why} (expected NAME=gguf:PATH, NAME=ollama-model:MODEL[:TAG], NAME=ollama:URL[#MODEL] or NAME=openai:URL[#MODEL])")]
pub struct SpecError {
    spec: String,
    why: &'static str,
}

impl BackendSpec {
    /// The name clients use.
    pub fn name(&self) -> &str {
        match self {
            BackendSpec::Gguf { name, .. }
            | BackendSpec::OllamaModel { name, .. }
            | BackendSpec::Ollama { name, .. }
            | BackendSpec::OpenAi { name, .. } => name,
        }
    }
}

impl std::str::FromStr for BackendSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let fail = |why| SpecError {
            spec: spec.to_owned(),
            why,
        };
        let (name, rest) = spec.split_once('=').ok_or_else(|| fail("no '='"))?;
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace) {
            return Err(fail("the name must be 1 to 128 characters without spaces"));
        }
        let (kind, target) = rest.split_once(':').ok_or_else(|| fail("no KIND:"))?;
        if target.is_empty() {
            return Err(fail("nothing after KIND:"));
        }
        let url_and_model = |target: &str| -> Result<(String, String), SpecError> {
            let (url, model) = match target.split_once('#') {
                Some((url, model)) if !model.is_empty() => (url, model),
                Some(_) => return Err(fail("empty #MODEL")),
                None => (target, name),
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(fail("the URL must start with http:// or https://"));
            }
            Ok((url.trim_end_matches('/').to_owned(), model.to_owned()))
        };
        let name = name.to_owned();
        match kind {
            "gguf" => Ok(BackendSpec::Gguf {
                name,
                path: PathBuf::from(target),
            }),
            "ollama-model" => Ok(BackendSpec::OllamaModel {
                name,
                model: target.to_owned(),
            }),
            "ollama" => {
                let (url, model) = url_and_model(target)?;
                Ok(BackendSpec::Ollama { name, url, model })
            }
            "openai" => {
                let (url, model) = url_and_model(target)?;
                Ok(BackendSpec::OpenAi { name, url, model })
            }
            _ => Err(fail("KIND must be gguf, ollama-model, ollama or openai")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            "smol=gguf:/m/s.gguf".parse::<BackendSpec>().unwrap(),
            BackendSpec::Gguf {
                name: "smol".into(),
                path: "/m/s.gguf".into()
            }
        );
        assert_eq!(
            "smol=ollama:http://h:11434/#smollm2:135m"
                .parse::<BackendSpec>()
                .unwrap(),
            BackendSpec::Ollama {
                name: "smol".into(),
                url: "http://h:11434".into(),
                model: "smollm2:135m".into()
            }
        );
        assert_eq!(
            "l=ollama-model:llama3.2:1b".parse::<BackendSpec>().unwrap(),
            BackendSpec::OllamaModel {
                name: "l".into(),
                model: "llama3.2:1b".into()
            }
        );
        assert_eq!(
            "smol=openai:http://h:8080/v1"
                .parse::<BackendSpec>()
                .unwrap(),
            BackendSpec::OpenAi {
                name: "smol".into(),
                url: "http://h:8080/v1".into(),
                model: "smol".into()
            }
        );
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        for bad in [
            "smol",
            "=gguf:x",
            "smol=gguf:",
            "smol=vllm:http://x",
            "smol=openai:ftp://x",
            "smol=ollama:http://x#",
        ] {
            let err = bad.parse::<BackendSpec>().unwrap_err().to_string();
            assert!(err.contains("expected NAME=gguf:PATH"), "{bad}: {err}");
        }
    }
}
