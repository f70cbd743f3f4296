import { HamalError } from '../../errors.ts';

/**
 * A command template's argv: split on spaces, each word's `{name}` placeholders filled in
 * from `values`, so a value never becomes two arguments and no shell ever sees it. An
 * unknown placeholder is an error naming `what` (the config key) and the placeholder.
 */
export function expandCommand(template: string, values: Readonly<Record<string, string>>, what: string): string[] {
  const argv = template
    .trim()
    .split(/\s+/)
    .map((word) =>
      word.replace(/\{(\w+)\}/g, (m, name: string) => {
        if (!Object.hasOwn(values, name)) {
          throw new HamalError('BAD_COMMAND_TEMPLATE', `${what}: unknown placeholder ${m}; known: ${Object.keys(values).map((k) => `{${k}}`).join(' ')}`, { subject: what });
        }
        return values[name]!;
      }),
    );
  if (!argv[0]) throw new HamalError('BAD_COMMAND_TEMPLATE', `${what} is empty`, { subject: what });
  return argv;
}
