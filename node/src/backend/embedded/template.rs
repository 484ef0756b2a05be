//! The chat template, from the GGUF's `tokenizer.chat_template`.
//!
//! Like Ollama, a template recognised as ChatML is applied by our own ChatML
//! formatter, which adds a system turn only when the conversation has one: the
//! Jinja templates of ChatML models (SmolLM2's among them) insert a default system
//! prompt ("You are a helpful AI assistant named SmolLM…") that small models answer
//! worse with, and Ollama drops it the same way. Any other template is rendered as
//! Jinja (minijinja) exactly as the file gives it; a file without a template gets
//! ChatML.

use super::super::ChatMessage;

/// How a conversation becomes a prompt.
#[derive(Clone, Debug)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n`…, then `<|im_start|>assistant\n`.
    ChatMl,
    /// The GGUF's own Jinja template.
    Jinja(String),
}

impl ChatTemplate {
    /// Chooses the template for a GGUF's `tokenizer.chat_template` (if any).
    pub fn from_gguf(template: Option<&str>) -> Self {
        match template {
            Some(t) if !t.contains("<|im_start|>") => ChatTemplate::Jinja(t.to_owned()),
            _ => ChatTemplate::ChatMl,
        }
    }

    /// What `/api/show` reports.
    pub fn describe(&self) -> String {
        match self {
            ChatTemplate::ChatMl => "chatml: {{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n".into(),
            ChatTemplate::Jinja(t) => t.clone(),
        }
    }

    /// The prompt for `messages`, ending where the assistant's answer starts. A
    /// conversation that ends with an assistant turn is a prefill (as in Ollama and
    /// llama.cpp): the prompt ends inside that turn, so the model continues its text.
    /// The mesh uses this to hand a half-finished answer to another supplier.
    pub fn apply(&self, messages: &[ChatMessage]) -> Result<String, String> {
        if let Some((last, earlier)) = messages.split_last() {
            if last.role == super::super::Role::Assistant {
                let mut out = self.apply_turns(earlier)?;
                out.push_str(&last.content);
                return Ok(out);
            }
        }
        self.apply_turns(messages)
    }

    fn apply_turns(&self, messages: &[ChatMessage]) -> Result<String, String> {
        match self {
            ChatTemplate::ChatMl => {
                let mut out = String::new();
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(m.role.as_str());
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str("<|im_end|>\n");
                }
                out.push_str("<|im_start|>assistant\n");
                Ok(out)
            }
            ChatTemplate::Jinja(source) => {
                let mut env = minijinja::Environment::new();
                env.add_function(
                    "raise_exception",
                    |msg: String| -> Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                env.add_template("chat", source)
                    .map_err(|e| format!("the model's chat template does not parse: {e}"))?;
                let messages: Vec<_> = messages
                    .iter()
                    .map(|m| minijinja::context! { role => m.role.as_str(), content => m.content })
                    .collect();
                env.get_template("chat")
                    .and_then(|t| {
                        t.render(minijinja::context! {
                            messages => messages,
                            add_generation_prompt => true,
                            bos_token => "",
                            eos_token => "",
                        })
                    })
                    .map_err(|e| format!("applying the model's chat template: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Role;

    fn msg(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }

    #[test]
    fn chatml_adds_no_default_system_turn() {
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
        let t = ChatTemplate::from_gguf(Some(smol));
        assert!(matches!(t, ChatTemplate::ChatMl));
        assert_eq!(
            t.apply(&[msg(Role::User, "Hi")]).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.apply(&[msg(Role::System, "Be brief."), msg(Role::User, "Hi")])
                .unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // A final assistant turn is continued, not closed.
        assert_eq!(
            t.apply(&[msg(Role::User, "Hi"), msg(Role::Assistant, "Hello, ")])
                .unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello, "
        );
    }

    #[test]
    fn other_templates_render_as_jinja() {
        let t = ChatTemplate::from_gguf(Some(
            "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
        ));
        assert_eq!(
            t.apply(&[msg(Role::User, "Hi")]).unwrap(),
            "[user]Hi[assistant]"
        );
        assert_eq!(
            t.apply(&[msg(Role::User, "Hi"), msg(Role::Assistant, "Hel")])
                .unwrap(),
            "[user]Hi[assistant]Hel"
        );
        let failing =
            ChatTemplate::from_gguf(Some("{{ raise_exception('roles must alternate') }}"));
        assert!(failing
            .apply(&[])
            .unwrap_err()
            .contains("roles must alternate"));
    }
}
